"""The napari application and its widgets: the only package that imports Qt."""
