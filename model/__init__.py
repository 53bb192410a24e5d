"""The learner: U-Net, training, tiled inference, vectorizing and export. GUI-free."""
