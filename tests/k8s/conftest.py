"""The real-cluster tier (opt-in, marker ``k8s_real``): needs CASA_TEST_KUBECONFIG (and optionally
CASA_TEST_NAMESPACE, CASA_TEST_IMAGE); its tests skip without it. No fixtures of its own."""
