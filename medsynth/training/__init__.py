"""Training: the GAN loop, differentiable augmentation and checkpoints."""
