"""The project's Triton kernels for the mixer (``ssd_backend="triton"``), each beside its plain-torch reference.

Importing this package needs ``triton``; :func:`triton_available` tells whether it imports.
"""
