"""Run configuration: YAML presets validated into typed, frozen models, with dotted CLI overrides.

A preset holds only what it changes; everything else comes from the field defaults here and in
``train/config.py``. An unknown key is an error that names its dotted path.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from featurize.catalog import CatalogConfig
from train.config import ModelConfig, TrainConfig
from train.interactions import InteractionsConfig


class ConfigError(ValueError):
    """A preset or override that does not validate; the message names each offending key path."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SynthData(_Frozen):
    """Generate a MicroLens-format log into the run folder instead of reading one (quick-start, tests)."""

    preset: Literal["small", "medium", "microlens_100k"] = Field("small", description="Size of the log.")
    seed: int = Field(0, description="Generator seed: the same seed gives the same files.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="SynthConfig fields to change, e.g. {p_sequential: 0.8}."
    )


class DataConfig(_Frozen):
    """Where the interactions, the catalog and the feature stores are."""

    interactions: InteractionsConfig | None = Field(None, description="The interaction log to evaluate on.")
    synthetic: SynthData | None = Field(
        None, description="Generate a log instead (exclusive with interactions)."
    )
    catalog: CatalogConfig | None = Field(
        None, description="Item ids, titles and videos; optional for ID models."
    )
    features_root: str | None = Field(
        None, description="Store root written by `seewhy featurize` (holds features/<feature-set>/)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.interactions is None) == (self.synthetic is None):
            raise ValueError("set exactly one of data.interactions and data.synthetic")
        return self


class ProtocolConfig(_Frozen):
    """The evaluation protocol (DESIGN.md, made exact)."""

    split: Literal["rolling", "leave-one-out"] = Field("rolling", description="Rolling daily split or LOO.")
    n_days: int = Field(7, ge=1, description="Evaluation days at the end of the log (paper: 7).")
    history_len: int = Field(10, ge=1, description="Most recent earlier interactions forming a history.")
    min_interactions: int = Field(2, ge=1, description="Users with fewer interactions are dropped.")
    popularity_window_days: int = Field(7, ge=1, description="Window of the most-popular baseline.")


class ExperimentConfig(_Frozen):
    """What is compared: models x representations, plus the most-popular baseline."""

    models: list[str] = Field(["two-tower", "sasrec"], description="Registered model names (train.models).")
    representations: list[str] = Field(
        ["id"],
        description="'id' (learned ID embedding), '<feature-set>' (residual MLP over a frozen feature), "
        "or 'id+<feature-set>' (gated fusion of both).",
    )
    most_popular: bool = Field(True, description="Add the most-popular baseline row to every table.")
    baselines: dict[str, str] = Field(
        default_factory=dict,
        description="Per model, the representation deltas are computed against (default id).",
    )


class RayConfig(_Frozen):
    """How to reach Ray: a cluster address, or a local Ray started by seewhy."""

    address: str | None = Field(
        None, description="Ray address ('auto' for a running cluster); None starts one."
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray (default: all).")
    object_store_mb: int | None = Field(None, ge=64, description="Object store size of the local Ray.")
    dashboard: bool = Field(True, description="Start the dashboard of a local Ray, on 127.0.0.1 only.")


class RunConfig(_Frozen):
    """One `seewhy run`: data, protocol, experiment grid, model and training settings."""

    name: str = Field("run", description="Run name; the run folder is output_dir/name.")
    output_dir: str = Field("runs", description="Parent of run folders (relative paths: to the working dir).")
    data: DataConfig
    protocol: ProtocolConfig = ProtocolConfig()
    experiment: ExperimentConfig = ExperimentConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    ray: RayConfig = RayConfig()

    @field_validator("name")
    @classmethod
    def _name_stays_inside_output_dir(cls, v: str) -> str:
        # The run folder is output_dir/name: a path in the name would put it (and what --fresh
        # removes) anywhere on disk.
        if not v or v in (".", "..") or "/" in v or "\\" in v or v.startswith("~") or Path(v).is_absolute():
            raise ValueError(
                f"{v[:200]!r} is not a plain folder name (no '/', '..', '~' or absolute path): the run "
                "folder is output_dir/name; set output_dir to choose where it goes"
            )
        return v

    @property
    def run_dir(self) -> Path:
        return (Path(self.output_dir).expanduser() / self.name).resolve()


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.c=value`` inside nested dicts, creating levels as needed."""
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
        node = nxt
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=3`` -> ('a.b', 3); the value is parsed as YAML (numbers, booleans, lists)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected key.path=value")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def _format(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {path}: {msg}")
    return "\n".join(lines)


class Replace(dict):
    """A mapping tagged ``!replace`` in a preset: it replaces the base preset's mapping instead of
    being merged into it key by key."""


class _PresetLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` plus the ``!replace`` tag (nothing else: no arbitrary objects)."""


_PresetLoader.add_constructor(
    "!replace", lambda loader, node: Replace(loader.construct_mapping(node, deep=True))
)


def merge_over(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``: mappings merge key by key, anything else (and ``!replace``) replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and not isinstance(value, Replace) and isinstance(out.get(key), dict):
            out[key] = merge_over(out[key], value)
        else:
            out[key] = dict(value) if isinstance(value, Replace) else value
    return out


def read_preset(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """One YAML preset as a dict; a top-level ``base: other.yaml`` (relative to this file's folder) is
    read first and this file's keys are merged over it, so a variant holds only what it changes."""
    path = Path(path)
    if path.resolve() in _chain:
        loop = " -> ".join(str(p) for p in (*_chain, path.resolve()))
        raise ConfigError(f"{path}: base presets form a loop: {loop}")
    try:
        loaded = yaml.load(path.read_text(), Loader=_PresetLoader)  # a SafeLoader: no arbitrary objects
    except FileNotFoundError:
        where = f" (the base of {_chain[-1]})" if _chain else ""
        raise ConfigError(f"config file {path} does not exist{where}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
    parent = loaded.pop("base", None)
    if parent is None:
        return loaded
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: base: expected the path of another preset, got {str(parent)[:200]!r}")
    return merge_over(read_preset(path.parent / parent, (*_chain, path.resolve())), loaded)


def load_tree(path: str | Path | None, overrides: list[str] = (), base: dict | None = None) -> dict:
    """Read a YAML preset (with its ``base:`` chain) into a dict over ``base``, then apply ``--set``
    overrides."""
    tree: dict = copy.deepcopy(base) if base else {}
    if path is not None:
        tree.update(read_preset(path))
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(tree, key, value)
    return tree


def validate(model: type[BaseModel], tree: dict, source: str, context: dict | None = None) -> Any:
    """Validate a tree into ``model``; errors become one ConfigError naming every bad key path."""
    try:
        return model.model_validate(tree, context=context)
    except ValidationError as e:
        raise ConfigError(_format(e, source)) from None


def load_config(path: str | Path | None, overrides: list[str] = (), base: dict | None = None) -> RunConfig:
    """Read a YAML preset, apply ``--set`` overrides, validate into a RunConfig."""
    return validate(RunConfig, load_tree(path, overrides, base), str(path or "<overrides>"))
