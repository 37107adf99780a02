"""Message-bus connectors: Kafka (kafka-python), the embedded broker, and an in-memory bus."""
