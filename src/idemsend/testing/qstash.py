"""A QStash-like deliverer for testing webhooks (needs ``idemsend[qstash]``)."""

from ._qstash import Attempt, Delivery, QStashDeliverer, sign

__all__ = ["Attempt", "Delivery", "QStashDeliverer", "sign"]
