"""The data part: datasets on disk. It owns downloading and extracting the built-in
datasets (download, archives), the prepared arrays and their facts (datasets), reading images
(images), the user's folder and CSV datasets (listing, image_sample, user_datasets) and
the checks of damaged files already on disk (integrity).

It may import the base modules, layers, spec and models; never training or above.
"""
