"""The Docker Swarm backend: a deployment is one Swarm service across the Swarm's nodes."""
