"""placeholder"""
Classifier = None
