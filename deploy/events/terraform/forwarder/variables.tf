variable "central_event_bus_arn" {
  description = "The event_bus_arn output of the central module (or the EventBusArn output of kms-events-queue.yaml)."
  type        = string
  validation {
    condition     = can(regex("^arn:aws[a-z-]*:events:[a-z0-9-]+:[0-9]{12}:event-bus/[A-Za-z0-9_.-]{1,256}$", var.central_event_bus_arn))
    error_message = "central_event_bus_arn: an event bus ARN, arn:aws:events:REGION:ACCOUNT:event-bus/NAME."
  }
}

variable "tags" {
  description = "Tags for every resource that takes them."
  type        = map(string)
  default     = {}
}
