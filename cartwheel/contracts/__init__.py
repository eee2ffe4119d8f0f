"""Message contracts: one module per owning service, all built on :mod:`cartwheel.contracts.base`."""
