"""placeholder"""
Detector = None
