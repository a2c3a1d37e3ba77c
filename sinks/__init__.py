"""Built-in sinks (file, Kafka, webhook), registered as ``cdc.sinks`` entry points."""
