"""The end-to-end demo on synthetic slides (``exaslide demo``, ``make demo``)."""

from exaslide.demo.pipeline import DemoOptions, run_demo

__all__ = ["DemoOptions", "run_demo"]
