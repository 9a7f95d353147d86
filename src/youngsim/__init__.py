"""youngsim: an executable model of accessed-bit harvesting across primary and secondary
MMUs (mm, mmu_notifier, KVM), checked for safety and measured for cost."""

__version__ = "0.1.0"
