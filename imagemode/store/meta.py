"""Commit metadata keys: the contract between the importer, which writes them, and `status`, `upgrade`
and `prune`, which read them. A module of its own so that `status` reads them without importing the
importer (every module imported costs time on a slow device)."""

IMAGE = "imagemode.image"
DIGEST = "imagemode.manifest-digest"
MANIFEST = "imagemode.manifest"
CONFIG = "imagemode.config"
VERSION = "version"  # ostree's own key: `ostree admin status` prints it
WHITEOUTS = "imagemode.whiteouts"  # on a layer commit: the layer's whiteouts, as JSON
MERGED = "imagemode.merged"  # on an image commit: the key of its merged run (imagemode/merged/KEY)
