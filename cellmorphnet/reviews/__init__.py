"""What a lab's reviewers decided: the review database (``store``: cases, cells, reviews, the export)."""
