"""Input and output: sources, sinks, codecs and the Kafka client, behind the engine's interfaces."""
