"""twinflag trainer: duplicate pairs → a twin encoder, a calibrated threshold, a model directory."""
