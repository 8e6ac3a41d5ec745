"""One module per data source. Each defines a ``Source`` subclass decorated with ``@register``;
``registry`` imports every module here, so adding a dataset means adding one file."""
