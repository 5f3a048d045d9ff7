"""Model monitoring: drift against reference profiles and label feedback."""
