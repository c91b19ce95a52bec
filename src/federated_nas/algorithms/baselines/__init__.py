"""The fixed-network and personalization baselines the NAS papers compare against, one module each."""
