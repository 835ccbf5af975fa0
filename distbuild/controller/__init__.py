"""The controller: accepts build requests, schedules steps on workers, relays their output."""
