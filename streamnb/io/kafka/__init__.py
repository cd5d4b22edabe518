"""The Kafka client: configuration, connection checks, topics and a peek at records."""
