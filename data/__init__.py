"""The data layer every stage reads and writes: format, importers, splits, statistics, previews.

Torch-free and Python 3.8 compatible: it runs on the line computer too.
"""
