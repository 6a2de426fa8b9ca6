"""The Kubernetes Gateway API in the mesh model: conversion.py derives Istio Gateways and
VirtualServices from it (as istiod does), status.py the status of its objects."""
