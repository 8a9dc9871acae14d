"""The chaos suite: real services under seeded faults (see campaign.py)."""
