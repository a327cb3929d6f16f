"""Synthesis: the procedural line simulator and the defect generator."""
