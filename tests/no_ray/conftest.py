"""The tests that need no Ray: the decision core (its fakes and the seeded simulation),
the switch, the CLI without Ray, the Grafana dashboard. They run where Ray is not
installed (.ci/run does), so nothing here, nor in any module of this folder, imports Ray."""
