"""exaslide: deep learning on gigapixel whole-slide images, from a laptop to a cluster.

The package is organised as one sub-package per stage of the pipeline:

- :mod:`exaslide.slides`: open any whole-slide image (OpenSlide, tifffile, plain images).
- :mod:`exaslide.annotations`: ASAP XML, QuPath GeoJSON, NCRF JSON and CSV annotations.
- :mod:`exaslide.masks`: tissue detection and tumour / normal-tissue label masks.
- :mod:`exaslide.synth`: synthetic pyramidal slides and cohorts with known ground truth.

Importing the package has no side effects; heavy modules are imported where used.
"""

from exaslide.errors import ExaslideError

__version__ = "0.1.0"
__all__ = ["ExaslideError", "__version__"]
