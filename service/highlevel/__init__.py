"""highlevel"""
