"""`seewhy demo`: the whole system offline on a generated world.

recipe.py   the demo recipe: world -> featurize -> run -> report + caption browser
world.py    the demo world generator (MicroLens-layout catalogue, clips, interaction log)
assets/     stored speech clips the world mixes into its clips (and the maintainer script behind them)
"""
