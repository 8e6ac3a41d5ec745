"""Image processing with no model: reading any microscope image (``imaging``), finding the white cell in a crop
(``cellfinder``) and every white cell in a smear field (``fields``), colour and stain (``colour``)."""
