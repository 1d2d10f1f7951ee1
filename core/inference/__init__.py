"""Running a model: events and parameters (no torch), and the engine that loads, quantizes and decodes
with torch. Only the engine's modules import torch; importing this package does not."""
