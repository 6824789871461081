"""TrackingBERT pretraining: truth tracks as module-token sequences, the MDM and NTP tasks, the
count baseline, metrics, and the `tracking_bert` pipeline stage."""
