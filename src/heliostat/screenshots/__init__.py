"""Screenshots: Helioviewer layer strings, regions of interest and the cached screenshot service."""
