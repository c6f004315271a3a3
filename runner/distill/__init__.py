"""Distillation's building blocks: losses (kd, tinybert, sinkd), layer maps, student construction."""
