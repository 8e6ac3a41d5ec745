"""The data layer: registry, fetch (download / verify / import), prepare, and the prepared store."""
