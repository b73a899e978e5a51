// Command pause is the pod sandbox's process: it holds the pod's namespaces
// and does nothing else until it is told to stop. No registry is reachable
// from the test machines, so the sandbox image is built from this.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	// As PID 1 of the sandbox it also inherits orphaned processes; SIGCHLD
	// needs no handling for them to be reaped by the runtime's shim.
	<-stop
}
