"""The provisioning cloud: device registry, counted jobs, per-device keys, MCUboot signing, audit."""
