"""Deployment: using a trained model on new images (predict, export, explain, serve)."""
