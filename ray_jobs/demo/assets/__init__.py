"""Data files of the demo world: stored speech clips (``speech/``, with ``manifest.json``) and the maintainer
script that regenerates them (``make_speech``). A package so that installs ship it with ``ray_jobs``."""
