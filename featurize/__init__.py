"""featurize: video files to caption stores and feature stores, as a streaming Ray Data graph.

Entry point: ``featurize.pipeline.run_featurize(FeaturizeConfig)`` (the ``seewhy featurize`` command).
Modules: ``config`` (the run's settings), ``catalog`` (items), ``decode`` (frames and audio), the stages
(``captioners``, ``asr``, ``sound_events``, ``audio_lm``, ``text_encoders``, ``baselines``), ``graph``
(stages on Ray Data, the store writer), ``stores`` (Parquet caption and feature stores) and ``refs``
(model references). Importing the package loads nothing heavy: torch, transformers and Ray are
imported where they are used, models inside the Ray actors.
"""
