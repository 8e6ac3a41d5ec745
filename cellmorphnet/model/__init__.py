"""The network: building it with its pretrained weights (``network``), its loss over coarse and fine labels
(``losses``), and running it over prepared splits in each dataset's label space (``prediction``)."""
