"""twinflag worker: documents from Kafka → embed → nearest earlier posts → duplicate flags."""

__version__ = "0.1.0"
