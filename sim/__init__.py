"""sim: the plant (pandapower networks, device models, profiles, fast power flow). Knows nothing of agents, MQTT or Modbus."""
