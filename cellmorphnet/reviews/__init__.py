"""What a lab's reviewers decided: the review database (``store``: cases, cells, reviews) and the export of its
reviewed cells as a dataset (``export``)."""
