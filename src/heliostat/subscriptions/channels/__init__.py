"""Delivery channels: one per action kind that leaves the server (mail, webhooks, files)."""
