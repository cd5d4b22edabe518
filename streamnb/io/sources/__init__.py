"""Sources: where records come from (memory, files, the Nexmark generator, Kafka)."""
