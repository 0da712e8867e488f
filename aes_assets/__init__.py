"""The Dagster layer: thin assets over aes_core, checks, partitions, sensors, schedules."""
