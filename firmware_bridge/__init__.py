"""firmware_bridge: SunSpec Modbus register images, a Modbus device client and emulated devices. Knows nothing of agents, MQTT or the simulator."""
