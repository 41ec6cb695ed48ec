"""The descriptor pool our generated protobuf modules register into (see setup.py for why it is private)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
